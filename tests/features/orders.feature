Feature: Orders, fills and positions survive a dropped connection
  As a trader
  I want every fill and commission booked exactly once
  So that my orders, costs and positions stay right when the gateway drops me

  Background:
    Given the IBKR TWS/Gateway is running

  Scenario: An order filled in two parts
    Given I am connected to IBKR
    And the gateway fills orders in 2 parts
    When I buy 5 AAPL at market
    Then the order should be filled for 5 shares
    And the order should show 2 fills
    And a commission should be recorded for each fill

  Scenario: A fill while I am disconnected is recovered
    Given I am connected to IBKR
    And I have a working order to buy 8 AAPL
    When the gateway drops me and stops answering
    And the order fills 8 shares at 151 while I am away
    And the gateway answers again
    Then I should be reconnected
    And the order should show 1 fill of 8 shares at 151
    And the commission of that fill should be recorded once
    And the order should be filled for 8 shares
    And the log should say the fill was recovered

  Scenario: A fill while I was logged off is recovered when I log on again
    Given I am connected to IBKR
    And I have a working order to buy 4 AAPL
    When I disconnect from IBKR
    And the order fills 4 shares at 149 while I am away
    And I connect to IBKR again
    Then the order should show 1 fill of 4 shares at 149
    And the commission of that fill should be recorded once
    And the order should be filled for 4 shares
    And the log should say the fill was recovered

  Scenario: A fill the gateway sends again is counted once
    Given I am connected to IBKR
    And I bought 3 AAPL at market
    When the gateway drops me
    Then I should be reconnected
    When the gateway drops me
    Then I should be reconnected
    And the order should show 1 fill
    And the commission of that fill should be recorded once

  Scenario: A read-only session refuses orders
    Given I am connected to IBKR in read-only mode
    When I try to buy 1 AAPL at market
    Then the order should be refused because the session is read-only
    And the gateway should not have received an order

  Scenario: No order is sent while TWS has lost IB
    Given I am connected to IBKR
    And TWS loses its connection to IB
    When I try to buy 1 AAPL at market
    Then the order should be refused because the connection is lost
    And the gateway should not have received an order

  Scenario: Positions show market prices and profit and loss
    Given I am connected to IBKR
    And I bought 10 AAPL at market
    And AAPL trades at 155
    When I sell 4 AAPL with a limit of 160 and it fills
    Then my AAPL position should be 6 shares at an average price of 150
    And my AAPL position should show a market price of 155 and a market value of 930
    And my AAPL position should show an unrealized profit of 30 and a realized profit of 40

  Scenario: Orders of an earlier run are booked whole after a restart
    Given my earlier run bought 5 AAPL at market in 2 fills
    And my earlier run left an order to buy 10 AAPL with 4 filled
    When I start the bot again and connect to IBKR
    Then the bought order should show BUY 5 AAPL, Filled, 5 filled, with 2 fills
    And the working order should show BUY 10 AAPL, Submitted, 4 filled, with 1 fill
    And every order in my book should have its details and a commission for each fill

  Scenario: An order sent as the gateway drops is confirmed after reconnect
    Given I am connected to IBKR
    And the gateway will go down as it receives my next order, losing its answer
    When I send an order to buy 5 AAPL at market
    Then the order should be uncertain
    And I should have been told that the order is uncertain
    When the gateway answers again
    Then I should be reconnected
    And the order should be confirmed as Filled with 1 fill and its commission
    And I should have been told once that the order was confirmed as Filled
    And the gateway should have received the order once

  Scenario: An order that never reached IB is reported as not received
    Given I am connected to IBKR
    And the gateway will go down while my next order is on its way, losing the order
    When I send an order to buy 5 AAPL at market
    Then the order should be uncertain
    When the gateway answers again
    Then I should be reconnected
    And the order should be reported as not received
    And the gateway should not have the order
    And sending the same order again should be refused
    When I send the order again as a new order
    Then it should be filled under a new order id
    And the gateway should have received the order once

  Scenario: Nothing is sent twice
    Given I am connected to IBKR
    And I have a working order to buy 8 AAPL
    And the gateway will go down as it receives my next cancel, losing its answer
    When I cancel the order
    Then the order should be uncertain
    And cancelling it again should be refused while I am away
    And changing it should be refused while I am away
    When the gateway answers again
    Then I should be reconnected
    And the order should be confirmed as Cancelled
    And the gateway should have received the order once and the cancel once
